"""The two Kubernetes manifests that copy files of this repository, rendered from those files.

``deploy/k8s/configmap-topology.yaml`` holds ``topologies/ecommerce.yaml``;
``deploy/k8s/prometheusrule.yaml`` holds the groups of ``deploy/prometheus/alerts.yml``. The tests
(``test_k8s.py``) fail when either copy drifts from its source; rewrite both with

    .venv/bin/python -m tests.deploy.k8s_sources
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
TOPOLOGY = REPO / "topologies" / "ecommerce.yaml"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
CONFIGMAP = K8S / "configmap-topology.yaml"
PROMETHEUS_RULE = K8S / "prometheusrule.yaml"

LABELS = {"app.kubernetes.io/name": "pipeline", "pipeline.topology": "ecommerce"}
REGENERATE = "rewrite with: .venv/bin/python -m tests.deploy.k8s_sources"


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks (the topology file stays readable)."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _dump(header: str, document: dict[str, Any]) -> str:
    body = yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    return header + body


def configmap() -> str:
    return _dump(
        f"# Generated from topologies/{TOPOLOGY.name}; do not edit,\n# {REGENERATE}\n"
        "# Mounted at /etc/pipeline/topologies; the topology's ../avro/ schemas are the image's.\n",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "pipeline-topology", "labels": LABELS},
            "data": {TOPOLOGY.name: TOPOLOGY.read_text(encoding="utf-8")},
        },
    )


def prometheus_rule() -> str:
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    return _dump(
        "# Generated from deploy/prometheus/alerts.yml, where the rules, their unit tests and the\n"
        f"# runbook live; do not edit, {REGENERATE}\n"
        "# The Prometheus Operator loads PrometheusRules matching its ruleSelector: add the label it\n"
        "# selects on (e.g. release: <your kube-prometheus-stack release>).\n",
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PrometheusRule",
            "metadata": {"name": "pipeline", "labels": {"app.kubernetes.io/name": "pipeline"}},
            "spec": {"groups": groups},
        },
    )


def main() -> None:
    CONFIGMAP.write_text(configmap(), encoding="utf-8")
    PROMETHEUS_RULE.write_text(prometheus_rule(), encoding="utf-8")
    print(f"wrote {CONFIGMAP.relative_to(REPO)} and {PROMETHEUS_RULE.relative_to(REPO)}")


if __name__ == "__main__":
    main()
