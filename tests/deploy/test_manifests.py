"""Offline checks of the Kubernetes manifests (deploy/base) and the Grafana dashboard.

Schema validation against the Kubernetes and CRD schemas needs downloaded tools and lives in
``.ci/validate-deploy``; these tests only read the files, so they run everywhere.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "base"
DASHBOARD = DEPLOY / "grafana" / "streamer-dashboard.json"

UID = 10001
METRICS_PORT = 8000

#: The service's Prometheus metrics: name -> (type, labels).
METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "streamer_alerts_consumed_total": ("counter", frozenset({"topic"})),
    "streamer_alerts_decoded_total": ("counter", frozenset({"survey"})),
    "streamer_alerts_rejected_total": ("counter", frozenset({"reason"})),
    "streamer_embeddings_produced_total": ("counter", frozenset()),
    "streamer_batch_messages": ("histogram", frozenset()),
    "streamer_stage_seconds": ("histogram", frozenset({"stage"})),
    "streamer_onnx_batch_windows": ("histogram", frozenset()),
    "streamer_windows_total": ("counter", frozenset({"source"})),
    "streamer_consumer_lag": ("gauge", frozenset({"topic", "partition"})),
    "streamer_history_objects": ("gauge", frozenset()),
    "streamer_history_points": ("gauge", frozenset()),
    "streamer_history_bytes": ("gauge", frozenset()),
    "streamer_model_info": ("gauge", frozenset({"model", "sha256", "output", "reduction"})),
    "streamer_ready": ("gauge", frozenset()),
}
#: Labels Prometheus adds to every scraped series (ServiceMonitor target labels).
TARGET_LABELS = frozenset({"namespace", "pod", "service", "job", "instance", "container", "endpoint"})


def _series_names() -> dict[str, str]:
    """Queryable series -> metric (histograms expose _bucket, _sum and _count)."""
    names = {}
    for name, (kind, _) in METRICS.items():
        if kind == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                names[name + suffix] = name
        else:
            names[name] = name
    return names


SERIES = _series_names()


def _yaml_files() -> list[Path]:
    return sorted(BASE.glob("*.yaml"))


def _documents(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


@pytest.fixture(scope="module")
def resources() -> list[dict[str, Any]]:
    docs = []
    for path in _yaml_files():
        if path.name != "kustomization.yaml":
            docs.extend(_documents(path))
    return docs


def _one(resources: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [r for r in resources if r["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def statefulset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return _one(resources, "StatefulSet")


@pytest.fixture(scope="module")
def pod_spec(statefulset: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = statefulset["spec"]["template"]["spec"]
    return spec


@pytest.fixture(scope="module")
def container(pod_spec: dict[str, Any]) -> dict[str, Any]:
    containers = [c for c in pod_spec["containers"] if c["name"] == "streamer"]
    assert len(containers) == 1
    return containers[0]


@pytest.fixture(scope="module")
def config(resources: list[dict[str, Any]]) -> dict[str, str]:
    data: dict[str, str] = _one(resources, "ConfigMap")["data"]
    return data


def _walk(node: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair of a parsed YAML/JSON tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# ----------------------------------------------------------------------------- files


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: p.name)
def test_yaml_parses_into_named_objects(path: Path) -> None:
    docs = _documents(path)
    assert docs, f"{path.name} is empty"
    for doc in docs:
        assert isinstance(doc, dict)
        assert doc.get("apiVersion") and doc.get("kind"), path.name
        if doc["kind"] != "Kustomization":
            assert doc["metadata"]["name"], path.name
            assert "namespace" not in doc["metadata"], "the base leaves the namespace to overlays"


def test_kustomization_lists_every_file() -> None:
    kustomization = _documents(BASE / "kustomization.yaml")[0]
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed)), "duplicate resources"
    on_disk = {p.name for p in _yaml_files()} - {"kustomization.yaml"}
    assert set(listed) == on_disk
    assert not list(BASE.glob("*.yml")), "use .yaml"


def test_expected_kinds(resources: list[dict[str, Any]]) -> None:
    kinds = sorted(r["kind"] for r in resources)
    assert kinds == sorted(
        [
            "ConfigMap",
            "PodDisruptionBudget",
            "ScaledObject",
            "Service",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
            "StatefulSet",
            "TriggerAuthentication",
        ]
    )
    api = {r["kind"]: r["apiVersion"] for r in resources}
    assert api["ServiceMonitor"] == "monitoring.coreos.com/v1"
    assert api["ScaledObject"] == "keda.sh/v1alpha1"
    assert api["PodDisruptionBudget"] == "policy/v1"
    assert api["StatefulSet"] == "apps/v1"


# ----------------------------------------------------------------------------- security


def test_pod_security_context(pod_spec: dict[str, Any]) -> None:
    ctx = pod_spec["securityContext"]
    assert ctx["runAsNonRoot"] is True
    assert ctx["runAsUser"] == UID
    assert ctx["fsGroup"] == UID
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod_spec["automountServiceAccountToken"] is False
    # Service links would put STREAMER_METRICS_PORT=tcp://... (and possibly STREAMER_KAFKA_*,
    # forwarded to librdkafka) into the environment.
    assert pod_spec["enableServiceLinks"] is False
    assert not pod_spec.get("hostNetwork") and not pod_spec.get("hostPID") and not pod_spec.get("hostIPC")


def test_container_security_context(pod_spec: dict[str, Any]) -> None:
    containers = pod_spec["containers"] + pod_spec.get("initContainers", [])
    for c in containers:
        ctx = c["securityContext"]
        assert ctx["runAsNonRoot"] is True, c["name"]
        assert ctx["runAsUser"] == UID, c["name"]
        assert ctx["readOnlyRootFilesystem"] is True, c["name"]
        assert ctx["allowPrivilegeEscalation"] is False, c["name"]
        assert ctx.get("privileged", False) is False, c["name"]
        assert ctx["capabilities"]["drop"] == ["ALL"], c["name"]
        assert not ctx["capabilities"].get("add"), c["name"]
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, c["name"]


def test_service_account(resources: list[dict[str, Any]], pod_spec: dict[str, Any]) -> None:
    sa = _one(resources, "ServiceAccount")
    assert pod_spec["serviceAccountName"] == sa["metadata"]["name"]
    assert sa["automountServiceAccountToken"] is False


# ----------------------------------------------------------------------------- container


def _port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    numbers = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    assert numbers, f"no container port named {port}"
    return int(numbers[0])


@pytest.mark.parametrize(
    ("probe", "path"),
    [("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")],
)
def test_probes(container: dict[str, Any], probe: str, path: str) -> None:
    get = container[probe]["httpGet"]
    assert get["path"] == path
    assert _port(container, get["port"]) == METRICS_PORT


def test_startup_probe_allows_model_loading(container: dict[str, Any]) -> None:
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300


def test_metrics_port_matches_config(container: dict[str, Any], config: dict[str, str]) -> None:
    assert int(config["STREAMER_METRICS_PORT"]) == METRICS_PORT
    assert _port(container, "metrics") == METRICS_PORT


def test_resources(container: dict[str, Any]) -> None:
    for section in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            assert container["resources"][section][resource], f"{section}.{resource}"


def test_grace_period_drains_a_batch(pod_spec: dict[str, Any]) -> None:
    assert pod_spec["terminationGracePeriodSeconds"] >= 60


def test_entrypoint_from_image(container: dict[str, Any]) -> None:
    assert "command" not in container, "keep the image's ENTRYPOINT (streamer)"
    assert container["args"] == ["run"]


def test_config_from_configmap(resources: list[dict[str, Any]], container: dict[str, Any]) -> None:
    name = _one(resources, "ConfigMap")["metadata"]["name"]
    assert {"configMapRef": {"name": name}} in container["envFrom"]


def test_configmap_settings(config: dict[str, str]) -> None:
    for key, value in config.items():
        assert isinstance(value, str), f"{key}: ConfigMap values must be strings"
        assert key.startswith(("STREAMER_", "HF_")), key
    assert config["STREAMER_MODEL"] in {"atcat", "astromer1", "astromer1-ztf", "astromer2"}
    assert config["STREAMER_DELIVERY"] in {"exactly-once", "at-least-once"}
    assert config["STREAMER_LOG_FORMAT"] in {"json", "text"}
    assert config["STREAMER_HISTORY_PATH"].startswith("/var/lib/streamer/")
    assert config["HF_HOME"].startswith("/var/cache/streamer/")
    assert ("STREAMER_INPUT_TOPICS" in config) != ("STREAMER_INPUT_PATTERN" in config)


def test_instance_id_from_pod_name(container: dict[str, Any]) -> None:
    env = {e["name"]: e for e in container["env"]}
    assert env["STREAMER_INSTANCE_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


# ----------------------------------------------------------------------------- volumes


def test_writable_paths_are_volumes(statefulset: dict[str, Any], pod_spec: dict[str, Any]) -> None:
    container = pod_spec["containers"][0]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    claims = {t["metadata"]["name"] for t in statefulset["spec"]["volumeClaimTemplates"]}
    # The history lives on the per-pod PersistentVolumeClaim.
    assert mounts["/var/lib/streamer"] in claims
    assert mounts["/var/lib/streamer"] not in volumes
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert "emptyDir" in volumes[mounts["/var/cache/streamer"]]
    for name in mounts.values():
        assert name in volumes or name in claims, name


def test_history_claim(statefulset: dict[str, Any]) -> None:
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"]


def test_secret_is_referenced_not_embedded(
    resources: list[dict[str, Any]], pod_spec: dict[str, Any], config: dict[str, str]
) -> None:
    # No Secret object (nor secret data) anywhere under deploy/.
    for path in DEPLOY.rglob("*.yaml"):
        for doc in _documents(path):
            assert doc.get("kind") != "Secret", f"{path} embeds a Secret"
            for key, _ in _walk(doc):
                assert key not in {"stringData"}, f"{path} embeds secret data"
    # The password arrives as a file from a Secret volume, at the path the config names.
    secret_volumes = {v["name"]: v["secret"] for v in pod_spec["volumes"] if "secret" in v}
    assert secret_volumes
    container = pod_spec["containers"][0]
    password_file = Path(config["STREAMER_KAFKA_SASL_PASSWORD_FILE"])
    mount = next(
        m
        for m in container["volumeMounts"]
        if m["name"] in secret_volumes and password_file.parent == Path(m["mountPath"])
    )
    assert mount.get("readOnly") is True
    secret = secret_volumes[mount["name"]]
    assert secret["secretName"]
    assert secret["defaultMode"] & 0o077 in (0, 0o040), "the password file must not be world-readable"
    assert password_file.name in {item["path"] for item in secret.get("items", [])}
    # Never a password in the environment (literal or from a Secret), nor in the ConfigMap.
    for env in container.get("env", []):
        assert "PASSWORD" not in env["name"] or env["name"].endswith("_FILE"), env["name"]
        if "value" in env:
            assert not re.search(r"PASSWORD|SECRET|TOKEN", env["name"]), env["name"]
    for key in config:
        assert "PASSWORD" not in key or key.endswith("_FILE"), key


def test_trigger_authentication_uses_secret_refs(resources: list[dict[str, Any]]) -> None:
    auth = _one(resources, "TriggerAuthentication")
    refs = auth["spec"]["secretTargetRef"]
    assert {r["parameter"] for r in refs} == {"username", "password"}
    assert all(r["name"] and r["key"] for r in refs)


# ----------------------------------------------------------------------------- services


def test_headless_service_governs_statefulset(
    resources: list[dict[str, Any]], statefulset: dict[str, Any]
) -> None:
    services = {s["metadata"]["name"]: s for s in resources if s["kind"] == "Service"}
    governing = services[statefulset["spec"]["serviceName"]]
    assert governing["spec"]["clusterIP"] == "None"
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert _matches(statefulset["spec"]["selector"]["matchLabels"], pod_labels)
    for service in services.values():
        assert _matches(service["spec"]["selector"], pod_labels), service["metadata"]["name"]
        assert [p["targetPort"] for p in service["spec"]["ports"]] == ["metrics"]


def test_service_monitor_scrapes_each_pod_once(resources: list[dict[str, Any]]) -> None:
    monitor = _one(resources, "ServiceMonitor")
    services = [s for s in resources if s["kind"] == "Service"]
    selected = [
        s for s in services if _matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert len(selected) == 1, "exactly one Service may match, or every pod is scraped twice"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in selected[0]["spec"]["ports"]}


def test_pdb_selects_the_pods(resources: list[dict[str, Any]], statefulset: dict[str, Any]) -> None:
    pdb = _one(resources, "PodDisruptionBudget")
    assert _matches(
        pdb["spec"]["selector"]["matchLabels"], statefulset["spec"]["template"]["metadata"]["labels"]
    )
    assert ("maxUnavailable" in pdb["spec"]) != ("minAvailable" in pdb["spec"])


# ----------------------------------------------------------------------------- autoscaling


def test_scaled_object(
    resources: list[dict[str, Any]], statefulset: dict[str, Any], config: dict[str, str]
) -> None:
    scaled = _one(resources, "ScaledObject")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": statefulset["metadata"]["name"],
    }
    assert "replicas" not in statefulset["spec"], "KEDA owns the replica count"
    partitions = int(scaled["metadata"]["annotations"]["streamer/input-topic-partitions"])
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert all(isinstance(v, str) for v in meta.values()), "KEDA trigger metadata values are strings"
    assert meta["bootstrapServers"] == config["STREAMER_BOOTSTRAP_SERVERS"]
    assert meta["consumerGroup"] == config["STREAMER_GROUP_ID"]
    assert meta["topic"] in config["STREAMER_INPUT_TOPICS"].split(",")
    assert meta["allowIdleConsumers"] == "false"
    auth = _one(resources, "TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]


# ----------------------------------------------------------------------------- dashboard


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def _expressions(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in _panels(dashboard) for t in p.get("targets", []) if t.get("expr")]
    for var in dashboard["templating"]["list"]:
        query = var.get("query")
        if var["type"] == "query":
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def test_dashboard_structure(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and dashboard["title"]
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "pod"} <= variables


def test_dashboard_queries_only_known_metrics(dashboard: dict[str, Any]) -> None:
    exprs = _expressions(dashboard)
    assert exprs
    used = set()
    for expr in exprs:
        assert expr.count("(") == expr.count(")"), expr
        assert expr.count("{") == expr.count("}"), expr
        for name in re.findall(r"\bstreamer_[a-z0-9_]+", expr):
            assert name in SERIES, f"unknown metric {name} in {expr}"
            used.add(SERIES[name])
        # Every selector with label matchers names one of the service's series.
        for name in re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{", expr):
            assert name in SERIES, f"unknown selector {name} in {expr}"
    assert used == set(METRICS), f"metrics without a panel: {sorted(set(METRICS) - used)}"


def test_dashboard_groups_by_known_labels(dashboard: dict[str, Any]) -> None:
    legends = {t["expr"]: t.get("legendFormat", "") for p in _panels(dashboard) for t in p.get("targets", [])}
    for expr in _expressions(dashboard):
        metrics = {SERIES[n] for n in re.findall(r"\bstreamer_[a-z0-9_]+", expr)}
        allowed = set(TARGET_LABELS) | {"le"}
        for metric in metrics:
            allowed |= METRICS[metric][1]
        for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
            labels = {label.strip() for label in group.split(",") if label.strip()}
            assert labels <= allowed, f"{sorted(labels - allowed)} not labels of {sorted(metrics)}: {expr}"
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legends.get(expr, "")):
            assert label in allowed, f"legend label {label} not in {expr}"
        for name, kind in ((n, METRICS[SERIES[n]][0]) for n in re.findall(r"\bstreamer_[a-z0-9_]+", expr)):
            if kind == "histogram" and name.endswith("_bucket"):
                assert "histogram_quantile" in expr, expr
            if kind == "counter":
                assert re.search(rf"(rate|increase)\(\s*{name}\b", expr), (
                    f"counter {name} needs rate(): {expr}"
                )
