"""deploy/prometheus: the config and rules are valid, every alert is unit-tested both ways, and
the rules only use metrics the worker exports."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.deploy.common import (
    PROMETHEUS,
    RECORDING_NAME,
    defined_series_names,
    needs_promtool,
    pipeline_names,
    promtool,
)

CONTRACT_ALERTS = {
    "PipelineWorkerDown",
    "PipelineConsumerLagGrowing",
    "PipelineDeadLetterRatioHigh",
    "PipelineNoInput",
    "PipelineEndToEndLatencyHigh",
    "PipelineGeoIPDatabaseStale",
    "PipelineGeoIPDisabled",
    "PipelineDedupeStoreUnbounded",
    "PipelineDeliveryFailures",
}


def load(name: str) -> Any:
    return yaml.safe_load((PROMETHEUS / name).read_text(encoding="utf-8"))


def rules() -> list[dict[str, Any]]:
    return [rule for group in load("alerts.yml")["groups"] for rule in group["rules"]]


def alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in rules() if "alert" in rule}


# -- promtool ------------------------------------------------------------------------------------


@needs_promtool
def test_promtool_check_config() -> None:
    result = promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(PROMETHEUS / "alerts.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_test_rules() -> None:
    result = promtool("test", "rules", str(PROMETHEUS / "alerts_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


# -- structure (no promtool needed) --------------------------------------------------------------


def test_the_contracted_alerts_exist() -> None:
    assert CONTRACT_ALERTS <= alerts().keys()


@pytest.mark.parametrize("name", sorted(alerts()))
def test_every_alert_has_for_severity_and_annotations(name: str) -> None:
    rule = alerts()[name]
    assert "for" in rule
    assert rule["labels"]["severity"] in {"critical", "warning"}
    annotations = rule["annotations"]
    assert {"summary", "description", "runbook_url"} <= annotations.keys()
    anchor = annotations["runbook_url"].rsplit("#", 1)[1]
    assert anchor == name.lower()
    runbook = (PROMETHEUS / "runbook.md").read_text(encoding="utf-8")
    assert f"\n## {name}\n" in runbook, f"runbook.md has no section for {name}"


def test_every_alert_is_tested_firing_and_quiet() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in load("alerts_test.yml")["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert firing == set(alerts()), "alerts never tested firing: " + str(set(alerts()) - firing)
    assert quiet == set(alerts()), "alerts never tested quiet: " + str(set(alerts()) - quiet)


def test_rules_use_only_exported_metrics_and_defined_recordings() -> None:
    exported = defined_series_names()
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    for rule in rules():
        expr = rule["expr"]
        unknown = pipeline_names(expr) - exported
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: unknown metrics {unknown}"
        assert set(RECORDING_NAME.findall(expr)) <= recorded, expr


def test_prometheus_scrapes_the_worker_and_loads_the_rules() -> None:
    config = load("prometheus.yml")
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = config["scrape_configs"]
    assert job["job_name"].startswith("pipeline")
    assert job["metrics_path"] == "/metrics"
    assert "worker:6066" in job["static_configs"][0]["targets"]
