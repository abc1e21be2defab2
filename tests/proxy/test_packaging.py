"""What users run beside the code: the Compose file, the Kubernetes example and the
Grafana dashboard, checked against the real settings, CLI and ``/metrics``."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from proxy.cli import _parser, load
from proxy.config import Settings, parse_hostport
from tests.proxy.conftest import Origin, ProxyFactory, control_url, eventually, url

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "packaging-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

# --------------------------------------------------------------------- Grafana

METRIC_NAME = re.compile(r"\b(?:warmproxy|process|python)_[A-Za-z0-9_:]*")
RATE_OF = re.compile(r"\b(?:rate|irate|increase)\(\s*((?:warmproxy|process|python)_[A-Za-z0-9_:]*)")
# The sample names a family of each type exposes, and those that only grow
# (what rate() and increase() may be applied to).
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "unknown": ("",),
}
MONOTONIC_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("_count", "_sum"),
}


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    return data


def panels(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every panel, including those inside (collapsed) rows."""
    out = []
    for panel in items:
        out.append(panel)
        out.extend(panels(panel.get("panels", [])))
    return out


def dashboard_queries(board: dict[str, Any]) -> list[str]:
    """The PromQL of every panel target and every templating variable."""
    queries = [t["expr"] for p in panels(board["panels"]) for t in p.get("targets", [])]
    for variable in board["templating"]["list"]:
        query = variable.get("query")
        queries.append(query["query"] if isinstance(query, dict) else query or "")
        queries.append(variable.get("definition", ""))
    return [q for q in queries if q]


def exported_series(exposition: str) -> tuple[set[str], set[str]]:
    """(every sample name the scrape's families expose, those that only grow).

    Families are taken from the metadata as well as the samples, so a
    labelled counter that has not counted anything yet (no samples, only
    ``# TYPE``) still counts as exported.
    """
    names: set[str] = set()
    monotonic: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + s for s in SAMPLE_SUFFIXES[family.type])
        monotonic.update(family.name + s for s in MONOTONIC_SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names, monotonic


def test_dashboard_is_an_importable_grafana_export() -> None:
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"]
    assert board["__inputs"][0]["pluginId"] == "prometheus"
    ids = [p["id"] for p in panels(board["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(board["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
    titles = " ".join(p["title"].lower() for p in panels(board["panels"]))
    for topic in ("hit ratio", "cache outcome", "origin", "queue", "precision", "alerts", "store"):
        assert topic in titles, f"no panel about {topic}"


async def test_dashboard_queries_only_exported_metrics(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # Fresh long enough for the hit below on a slow machine, short enough for
    # its warmed lifetime to resolve (and precision to be exported) soon after.
    origin.set("/short", headers={"Cache-Control": "public, max-age=3"}, body=b"short")
    origin.set("/long", headers={"Cache-Control": "public, max-age=60"})
    origin.set("/private", headers={"Cache-Control": "no-store"})
    proxy = await make_proxy(
        origin.url,
        control={"token": TOKEN},
        state={"dir": str(tmp_path / "state")},
        strategies={"predictive": {"enabled": True}},
        execution={"rate_limit": 0},
    )

    async def api(method: str, path: str, body: Any = None) -> dict[str, Any]:
        async with client.request(
            method, control_url(proxy, path), json=body, headers=AUTH
        ) as response:
            assert response.status < 300, await response.text()
            answer: dict[str, Any] = await response.json()
            return answer

    async def finished(run: dict[str, Any]) -> None:
        path = f"/cache/warming/progress?run_id={run['run_id']}"

        async def done() -> bool:
            status = (await api("GET", path))["status"]
            return bool(status != "running")

        await eventually(done, within=10)

    for method, path in [
        ("GET", "/long"),
        ("GET", "/long"),
        ("GET", "/private"),
        ("POST", "/long"),
    ]:
        async with client.request(method, url(proxy, path)) as response:
            await response.read()
    await finished(await api("POST", "/cache/warming/warm-key", {"urls": ["/short", "/long"]}))
    async with client.get(url(proxy, "/short")) as response:  # a hit on a warmed entry
        assert "hit" in response.headers["Cache-Status"]
    await finished(await api("POST", "/cache/warming/start", {"strategy": "hot"}))

    scrape = ""

    async def scraped_precision() -> bool:
        nonlocal scrape
        async with client.get(control_url(proxy, "/metrics")) as response:
            scrape = await response.text()
        return "\nwarmproxy_warm_precision_ratio " in scrape

    # /short's warmed lifetime resolves (as used) once it expires, 3 s on.
    await eventually(scraped_precision, within=15)

    exported, monotonic = exported_series(scrape)
    queries = dashboard_queries(dashboard())
    used = {name for q in queries for name in METRIC_NAME.findall(q)}
    assert used, "the dashboard queries no warmproxy series"
    assert sorted(used - exported) == [], "queried but not exported"
    rated = {name for q in queries for name in RATE_OF.findall(q)}
    assert sorted(rated - monotonic) == [], "rate()/increase() of a series that is not a counter"


# --------------------------------------------------------------------- helpers


def model_has(path: list[str]) -> bool:
    """Whether ``path`` (lower-case parts) names a setting of :class:`Settings`."""
    model: type[BaseModel] = Settings
    for i, part in enumerate(path):
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            return i == len(path) - 1
    return False


def clear_warmproxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("WARMPROXY_"):
            monkeypatch.delenv(name)


def shutdown_bound(settings: Settings) -> float:
    """The longest a SIGTERM'd proxy may take (docs/operations.md)."""
    p, ex = settings.proxy, settings.execution
    return p.shutdown_delay + p.shutdown_timeout + 2 * ex.timeout


def seconds(text: str | int) -> float:
    match = re.fullmatch(r"(\d+)(s|m)?", str(text))
    assert match, f"not a duration: {text!r}"
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


def option(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{flag} missing from {argv}"
    return argv[argv.index(flag) + 1]


# --------------------------------------------------------------------- Compose

COMPOSE_ENV = {"WARMPROXY_TOKEN": "compose-test-token"}
EVICTING_POLICIES = {
    "volatile-lru",
    "allkeys-lru",
    "volatile-lfu",
    "allkeys-lfu",
    "volatile-ttl",
    "volatile-random",
    "allkeys-random",
}


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def interpolate(value: str) -> str:
    """Compose's ``${NAME}``, ``${NAME:-default}`` and ``${NAME:?message}``."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in COMPOSE_ENV, f"the test does not know ${{{name}}}"
        return COMPOSE_ENV[name]

    return re.sub(r"\$\{(\w+)(?::?[-?][^}]*)?\}", one, value)


def compose_settings(monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, dict[str, str]]:
    """warmproxy's effective settings in the Compose file: its environment and command."""
    service = compose()["services"]["warmproxy"]
    env = {name: interpolate(str(value)) for name, value in service["environment"].items()}
    clear_warmproxy_env(monkeypatch)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load(_parser().parse_args(service["command"])), env


def test_compose_redis_is_a_bounded_evicting_cache() -> None:
    redis = compose()["services"]["redis"]
    assert redis["image"].split(":")[0] == "redis"
    assert redis["image"].split(":")[1].startswith("7")
    command = [str(c) for c in redis["command"]]
    assert re.fullmatch(r"[1-9]\d*(kb|mb|gb)", option(command, "--maxmemory").lower())
    assert option(command, "--maxmemory-policy") in EVICTING_POLICIES
    assert option(command, "--save") == ""
    assert "redis-cli" in " ".join(redis["healthcheck"]["test"])


def test_compose_environment_names_real_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    settings, env = compose_settings(monkeypatch)
    for name in env:
        assert name.startswith("WARMPROXY_"), name
        path = name.removeprefix("WARMPROXY_").lower().split("__")
        assert model_has(path), f"{name} is no setting ({'.'.join(path)})"
    assert settings.control.token.get_secret_value() == COMPOSE_ENV["WARMPROXY_TOKEN"]


def test_compose_wires_proxy_redis_and_origin(monkeypatch: pytest.MonkeyPatch) -> None:
    settings, _ = compose_settings(monkeypatch)
    services = compose()["services"]
    warmproxy = services["warmproxy"]

    assert settings.cache.store == "redis"
    redis_url = urlsplit(settings.cache.redis_url)
    assert (redis_url.hostname, redis_url.port or 6379) == ("redis", 6379)

    origin_args = _parser().parse_args(services["origin"]["command"])
    assert origin_args.command == "demo-origin"
    origin_host, origin_port = parse_hostport(origin_args.listen, what="origin")
    assert origin_host == "0.0.0.0"
    origin = urlsplit(settings.proxy.origin)
    assert (origin.hostname, origin.port) == ("origin", origin_port)
    assert f":{origin_port}/" in " ".join(services["origin"]["healthcheck"]["test"])

    # Reachable from the host: the proxy on all interfaces, the control
    # listener too (inside the container), with a token.
    _, proxy_port = parse_hostport(settings.proxy.listen, what="proxy")
    control_host, control_port = parse_hostport(settings.control.listen, what="control")
    assert control_host == "0.0.0.0"
    assert settings.control.token.get_secret_value()
    published = [str(p) for p in warmproxy["ports"]]
    assert f"{proxy_port}:{proxy_port}" in published
    assert f"127.0.0.1:{control_port}:{control_port}" in published
    assert f":{control_port}/readyz" in " ".join(warmproxy["healthcheck"]["test"])

    for dependency in ("redis", "origin"):
        assert warmproxy["depends_on"][dependency]["condition"] == "service_healthy"
    assert seconds(warmproxy["stop_grace_period"]) > shutdown_bound(settings)
    assert settings.state.dir.startswith(tuple(v.split(":")[1] for v in warmproxy["volumes"])), (
        "state.dir is not on the volume"
    )


# ------------------------------------------------------------------ Kubernetes


def kubernetes() -> dict[str, dict[str, Any]]:
    documents = yaml.safe_load_all((ROOT / "deploy" / "kubernetes.yaml").read_text())
    return {d["kind"]: d for d in documents if d}


def containers() -> dict[str, dict[str, Any]]:
    pod = kubernetes()["Deployment"]["spec"]["template"]["spec"]
    return {c["name"]: c for c in pod["containers"]}


def port_number(container: dict[str, Any], port: int | str) -> int:
    """A container port given by number or by name."""
    for item in container.get("ports", []):
        if port in (item["containerPort"], item.get("name")):
            return int(item["containerPort"])
    raise AssertionError(f"{container['name']} has no port {port!r}")


def k8s_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    """The sidecar's effective settings: its args, the ConfigMap file, its environment."""
    docs = kubernetes()
    sidecar = containers()["warmproxy"]
    args = list(sidecar["args"])
    config_path = Path(option(args, "--config"))
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in sidecar["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounted = [n for n, path in mounts.items() if Path(path) == config_path.parent]
    assert mounted, f"nothing mounted at {config_path.parent}"
    config_map = volumes[mounted[0]]["configMap"]["name"]
    assert docs["ConfigMap"]["metadata"]["name"] == config_map
    local = tmp_path / config_path.name
    local.write_text(docs["ConfigMap"]["data"][config_path.name])
    args[args.index("--config") + 1] = str(local)

    clear_warmproxy_env(monkeypatch)
    for item in sidecar.get("env", []):
        # Values from Secrets are the operator's; any non-empty value will do.
        monkeypatch.setenv(item["name"], item.get("value", "k8s-test-secret-0123"))
    return load(_parser().parse_args(args))


def test_k8s_containers_run_as_non_root() -> None:
    pod = kubernetes()["Deployment"]["spec"]["template"]["spec"]
    pod_context = pod.get("securityContext", {})
    for name, container in containers().items():
        context = {**pod_context, **container.get("securityContext", {})}
        assert context.get("runAsNonRoot") is True, name
        assert context.get("runAsUser", 0) != 0, name
        assert context.get("allowPrivilegeEscalation") is False, name
    sidecar = {**pod_context, **containers()["warmproxy"].get("securityContext", {})}
    assert sidecar["runAsUser"] == 10001  # the Dockerfile's user


def test_k8s_sidecar_fronts_the_app_and_is_probed_on_the_control_port(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = k8s_settings(monkeypatch, tmp_path)
    app, sidecar = containers()["app"], containers()["warmproxy"]

    origin = urlsplit(settings.proxy.origin)
    assert origin.hostname in ("127.0.0.1", "localhost")
    assert origin.port == port_number(app, "app")

    control_host, control_port = parse_hostport(settings.control.listen, what="control")
    assert control_host == "0.0.0.0", "the kubelet probes the pod's address"
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = sidecar[probe]["httpGet"]
        assert get["path"] == path
        assert port_number(sidecar, get["port"]) == control_port
    token = next(e for e in sidecar["env"] if e["name"] == "WARMPROXY_CONTROL__TOKEN")
    assert token["valueFrom"]["secretKeyRef"]["key"]

    _, proxy_port = parse_hostport(settings.proxy.listen, what="proxy")
    service = kubernetes()["Service"]
    assert [port_number(sidecar, p["targetPort"]) for p in service["spec"]["ports"]] == [proxy_port]
    labels = kubernetes()["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_k8s_grace_period_state_and_resources(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = k8s_settings(monkeypatch, tmp_path)
    pod = kubernetes()["Deployment"]["spec"]["template"]["spec"]
    sidecar = containers()["warmproxy"]
    assert pod["terminationGracePeriodSeconds"] > shutdown_bound(settings)
    # A read-only root filesystem: state must be on a volume.
    mounts = [m["mountPath"] for m in sidecar["volumeMounts"] if not m.get("readOnly")]
    assert any(settings.state.dir.startswith(m) for m in mounts), "state.dir is not writable"
    resources = sidecar["resources"]
    assert resources["requests"]["memory"] and resources["requests"]["cpu"]
    limit = resources["limits"]["memory"]
    assert limit.endswith("Mi")
    assert int(limit.removesuffix("Mi")) * 2**20 > settings.cache.max_bytes
