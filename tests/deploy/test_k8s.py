"""deploy/k8s: every manifest against the Kubernetes API's schemas (kubernetes-validate, strict:
unknown fields fail), the Prometheus Operator resources by shape, and what ties the manifests to
each other, to the image and to the worker: labels and selectors, ports, probes, the state
volume, settings, the shutdown time, and the copies of the topology and of the alert rules."""

from __future__ import annotations

import copy
import inspect
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from pipeline.cli import build_parser
from pipeline.runtime.output import OutputProducer
from pipeline.settings import ENV_PREFIX, Settings
from tests.deploy import k8s_sources
from tests.deploy.common import PROMETHEUS, needs_promtool, promtool
from tests.deploy.dockerfile_model import parse as parse_dockerfile

K8S = k8s_sources.K8S
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
"""The oldest Kubernetes these manifests are for (StatefulSet PVC retention is beta and on by
default since 1.27, GA in 1.32) and the newest kubernetes-validate knows."""

CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
RULE_KEYS = {"record", "alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
"""A PrometheusRule's rule (the CRD's schema)."""
ENDPOINT_KEYS = {"port", "path", "interval", "scrapeTimeout", "relabelings", "metricRelabelings"}
"""The ServiceMonitor endpoint fields used here (a subset of the CRD's)."""
DNS_1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for name in kustomization()["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text(encoding="utf-8")):
            if doc is not None:
                docs.append((name, doc))
    return docs


def by_kind() -> dict[str, list[dict[str, Any]]]:
    kinds: dict[str, list[dict[str, Any]]] = {}
    for _, doc in documents():
        kinds.setdefault(doc["kind"], []).append(doc)
    return kinds


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    docs = [d for d in by_kind()[kind] if name is None or d["metadata"]["name"] == name]
    assert len(docs) == 1, f"{kind} {name or ''}: {len(docs)} found"
    return docs[0]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.fixture(scope="module")
def statefulset() -> dict[str, Any]:
    return one("StatefulSet")


@pytest.fixture(scope="module")
def container(statefulset: dict[str, Any]) -> dict[str, Any]:
    (worker,) = statefulset["spec"]["template"]["spec"]["containers"]
    return worker


def plain_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


# -- the files -----------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    listed = set(kustomization()["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(
    "name,doc",
    [
        pytest.param(n, d, id=f"{d['kind']}/{d['metadata']['name']}")
        for n, d in documents()
        # Not in the API's schemas (any other unknown kind fails: no schema): shape tests below.
        if (d["apiVersion"], d["kind"]) not in CRD_KINDS
    ],
)
def test_manifests_match_the_kubernetes_schemas(
    name: str, doc: dict[str, Any], version: str
) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = "/".join(str(p) for p in exc.path)
        pytest.fail(f"{name}: {doc['kind']} {path}: {exc.message} (Kubernetes {version})")
    assert DNS_1123.fullmatch(doc["metadata"]["name"])
    assert "namespace" not in doc["metadata"], "kustomization.yaml sets the namespace"


def test_the_schemas_are_strict(statefulset: dict[str, Any]) -> None:
    """A misspelt field fails, so the check above means something."""
    broken = copy.deepcopy(statefulset)
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def test_the_generated_copies_are_up_to_date() -> None:
    assert k8s_sources.CONFIGMAP.read_text(encoding="utf-8") == k8s_sources.configmap(), (
        f"{k8s_sources.CONFIGMAP.name} differs from the topology: {k8s_sources.REGENERATE}"
    )
    assert (
        k8s_sources.PROMETHEUS_RULE.read_text(encoding="utf-8") == k8s_sources.prometheus_rule()
    ), f"{k8s_sources.PROMETHEUS_RULE.name} differs from alerts.yml: {k8s_sources.REGENERATE}"


# -- Prometheus Operator resources ---------------------------------------------------------------


def test_prometheus_rule_groups_equal_alerts_yml() -> None:
    rule = one("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert DNS_1123.fullmatch(rule["metadata"]["name"])
    alerts = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text(encoding="utf-8"))
    assert set(rule["spec"]) == {"groups"}
    assert rule["spec"]["groups"] == alerts["groups"], k8s_sources.REGENERATE
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for item in group["rules"]:
            assert ("record" in item) != ("alert" in item), item
            assert isinstance(item["expr"], str) and item["expr"]
            assert set(item) <= RULE_KEYS, item


@needs_promtool
def test_promtool_checks_the_prometheus_rule_groups(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": one("PrometheusRule")["spec"]["groups"]}))
    result = promtool("check", "rules", str(rules))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_service_monitor_scrapes_the_metrics_service_only() -> None:
    monitor = one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    selector = monitor["spec"]["selector"]["matchLabels"]
    scraped = [s for s in by_kind()["Service"] if selects(selector, s["metadata"]["labels"])]
    (service,) = scraped
    assert service["spec"].get("clusterIP") != "None", "the headless Service would scrape twice"
    # The Prometheus Operator names the job after the Service: the alerts want "pipeline-<topology>".
    assert re.fullmatch(r"pipeline-[a-z0-9-]+", service["metadata"]["name"])
    ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= ENDPOINT_KEYS, endpoint
        assert endpoint["port"] in ports
        assert endpoint["path"] == "/metrics"


# -- the workers ---------------------------------------------------------------------------------


def test_services_and_budget_select_the_workers(statefulset: dict[str, Any]) -> None:
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert selects(statefulset["spec"]["selector"]["matchLabels"], pod_labels)
    headless = one("Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    for service in by_kind()["Service"]:
        assert selects(service["spec"]["selector"], pod_labels), service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            assert port["targetPort"] == "web"
    budget = one("PodDisruptionBudget")
    assert selects(budget["spec"]["selector"]["matchLabels"], pod_labels)
    assert budget["spec"].get("maxUnavailable") == 1


def test_the_worker_command_runs_the_mounted_topology(
    statefulset: dict[str, Any], container: dict[str, Any]
) -> None:
    args = build_parser().parse_args(container["args"])
    assert args.command == "worker"
    assert "command" not in container, "keep the image's ENTRYPOINT (pipeline)"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    topology_dir = str(args.topology.parent)
    volume = next(
        v
        for v in statefulset["spec"]["template"]["spec"]["volumes"]
        if v["name"] == mounts[topology_dir]["name"]
    )
    configmap = one("ConfigMap", volume["configMap"]["name"])
    assert args.topology.name in configmap["data"]
    assert configmap["data"][args.topology.name] == k8s_sources.TOPOLOGY.read_text(encoding="utf-8")


def test_state_is_on_a_claim_at_the_data_dir(
    statefulset: dict[str, Any], container: dict[str, Any]
) -> None:
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    env = plain_env(container)
    assert mounts[claim["metadata"]["name"]] == env["PIPELINE_DATA_DIR"]
    assert env["PIPELINE_STORE"] == "rocksdb"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_settings_are_real_and_valid(container: dict[str, Any]) -> None:
    known = {ENV_PREFIX + f.name.upper() for f in fields(Settings)}
    names = {e["name"] for e in container["env"] if e["name"].startswith(ENV_PREFIX)}
    assert names - {"PIPELINE_PII_KEY"} <= known, names - known
    env = {k: re.sub(r"\$\((\w+)\)", "x", v) for k, v in plain_env(container).items() if k in known}
    settings = Settings.from_env(env)
    assert settings.standby_replicas == 0, "standbys cost half the throughput (see the comment)"
    assert settings.web_bind == "0.0.0.0"
    secret = next(e for e in container["env"] if e["name"] == "PIPELINE_PII_KEY")
    assert "secretKeyRef" in secret["valueFrom"], "the hashing key comes from a Secret"


def test_each_worker_announces_its_stable_name(
    statefulset: dict[str, Any], container: dict[str, Any]
) -> None:
    env = plain_env(container)
    service = statefulset["spec"]["serviceName"]
    assert env["PIPELINE_WEB_HOST"] == f"$(POD_NAME).{service}.$(POD_NAMESPACE).svc"
    defined = [e["name"] for e in container["env"]]
    assert defined.index("POD_NAME") < defined.index("PIPELINE_WEB_HOST"), (
        "$(VAR) only expands variables defined before it"
    )


def test_ports_and_probes(container: dict[str, Any]) -> None:
    (port,) = container["ports"]
    assert port == {"name": "web", "containerPort": Settings().web_port}
    assert plain_env(container)["PIPELINE_WEB_PORT"] == str(Settings().web_port)
    assert container["startupProbe"]["httpGet"] == {"path": "/health", "port": "web"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "web"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "web"}


def test_the_worker_has_time_to_stop(statefulset: dict[str, Any]) -> None:
    """The pod's grace period covers the longest graceful stop: a delivery in flight (the output
    producer's delivery timeout) and then closing the producer (its flush timeout)."""
    delivery = inspect.signature(OutputProducer).parameters["delivery_timeout_s"].default
    closing = inspect.signature(OutputProducer.close).parameters["timeout"].default
    grace = statefulset["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > delivery + closing


def test_resources_and_security(statefulset: dict[str, Any], container: dict[str, Any]) -> None:
    pod = statefulset["spec"]["template"]["spec"]
    uid, gid = (int(x) for x in parse_dockerfile()[-1].last("USER").value[0].split(":"))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid, "the Dockerfile's USER"
    assert pod["securityContext"]["fsGroup"] == gid
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    resources = container["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert "memory" in resources["limits"]
    rocksdb_mb = int(plain_env(container)["PIPELINE_ROCKSDB_MEMORY_MB"])
    limit = resources["limits"]["memory"]
    assert limit.endswith("Gi") and int(limit[:-2]) * 1024 > 2 * rocksdb_mb, (
        "the memory limit leaves room for the worker beside RocksDB's budget"
    )
