"""deploy/docker-compose.yml, without a Docker engine: the Compose Specification's JSON schema
(check-jsonschema's vendored copy), ``docker-compose config`` (Debian's docker-compose; CI
installs it), and what the stack needs to work: mounted files exist, workers scale, Prometheus
finds every worker and loads the rules, Grafana gets the data source and the dashboard, the
commands are valid ``pipeline`` command lines and the settings real ones."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.cli import build_parser
from pipeline.settings import ENV_PREFIX, Settings
from tests.deploy.common import GRAFANA, PROMETHEUS, REPO, needs_promtool, promtool

DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"

needs_docker_compose = pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="docker-compose is not installed (Debian: apt-get install docker-compose; .ci/run does)",
)


def interpolate(value: Any) -> Any:
    """Compose's ${VAR:-default} with an empty environment (what a fresh checkout gets)."""
    if isinstance(value, str):
        value = re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", value)
        return value.replace("$$", "$")
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return interpolate(yaml.safe_load(COMPOSE.read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    schema = ["--builtin-schema", "vendor.compose-spec"]
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", *schema, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str, bool]]:
    """(host path, container path, read-only) of each bind mount (short syntax)."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        if source.startswith((".", "/")):
            mounts.append(((DEPLOY / source).resolve(), target, mode == ["ro"]))
    return mounts


def mount_source(service: dict[str, Any], container_path: str) -> Path:
    """The repository file or directory behind a path in a service's container."""
    for source, target, _ in bind_mounts(service):
        if container_path == target or container_path.startswith(target + "/"):
            return source / container_path[len(target) :].lstrip("/")
    raise AssertionError(f"{container_path} is not mounted")


# -- validators ----------------------------------------------------------------------------------


def test_the_compose_spec_schema_accepts_it() -> None:
    result = check_jsonschema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_spec_schema_is_strict(tmp_path: Path) -> None:
    """A misspelt key fails, so the check above means something."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("stop_grace_period:", "stop_grace_periode:"))
    result = check_jsonschema(broken)
    assert result.returncode != 0
    assert "stop_grace_periode" in result.stdout + result.stderr


@needs_docker_compose
def test_docker_compose_config_accepts_it() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "COMPOSE_"))}
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config", "-q"],
        cwd=DEPLOY,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- what the stack needs ------------------------------------------------------------------------


def test_every_mounted_file_is_in_the_repository(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for source, target, read_only in bind_mounts(service):
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"
            assert source.is_relative_to(REPO), f"{name}: {source} is outside the repository"
            assert read_only, f"{name}: mount {target} read-only"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in compose["volumes"], f"{name}: volume {source} is not declared"


def test_the_worker_scales(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker
    assert "hostname" not in worker
    assert "ports" not in worker, "a fixed host port allows one replica"
    named = [v for v in worker.get("volumes", []) if not v.startswith((".", "/"))]
    assert not named, "a named volume would be shared by every replica's RocksDB"
    entrypoint = " ".join(worker["entrypoint"])
    assert "PIPELINE_WEB_HOST" in entrypoint and "exec pipeline" in entrypoint, (
        "each replica announces its own address, and pipeline replaces the shell (SIGTERM)"
    )


def test_commands_are_pipeline_command_lines(services: dict[str, Any]) -> None:
    worker = build_parser().parse_args(services["worker"]["command"])
    assert worker.command == "worker"
    traffic = build_parser().parse_args(services["traffic"]["command"])
    assert traffic.command == "produce"
    assert traffic.generate > 0 and traffic.rate > 0
    for name, args in (("worker", worker), ("traffic", traffic)):
        topology = mount_source(services[name], str(args.topology))
        assert topology.is_file(), f"{name}: {args.topology} is {topology}, which does not exist"


def test_pipeline_settings_are_real_and_valid(services: dict[str, Any]) -> None:
    known = {ENV_PREFIX + f.name.upper() for f in fields(Settings)}
    for name in ("worker", "traffic"):
        env = {k: str(v) for k, v in services[name]["environment"].items()}
        settings = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}
        assert settings.keys() - {"PIPELINE_PII_KEY"} <= known, f"{name}: {settings.keys() - known}"
        assert len(env["PIPELINE_PII_KEY"]) >= 16, "the pii enricher needs 16 bytes or more"
        parsed = Settings.from_env(settings)
        host, port = parsed.broker.split(":")
        advertised = services[host]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
        assert f"PLAINTEXT://{host}:{port}" in advertised, f"{name}: {parsed.broker}"
        if name == "worker":
            assert parsed.store == "rocksdb"


def test_healthchecks_and_start_order(services: dict[str, Any]) -> None:
    for name, service in services.items():
        assert "healthcheck" in service, f"{name}: no healthcheck (disable it explicitly)"
        for dependency, how in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if how["condition"] == "service_healthy":
                assert not services[dependency]["healthcheck"].get("disable"), dependency
    health = " ".join(services["worker"]["healthcheck"]["test"])
    assert f"127.0.0.1:{Settings().web_port}/health" in health
    assert services["worker"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["traffic"]["healthcheck"] == {"disable": True}


def test_the_worker_has_time_to_stop(services: dict[str, Any]) -> None:
    grace = services["worker"]["stop_grace_period"]
    seconds = int(grace[:-1]) * {"s": 1, "m": 60}[grace[-1]]
    assert seconds >= 150, "delivery timeout (120 s) + closing flush (30 s)"


def test_kafka_runs_kraft(services: dict[str, Any]) -> None:
    kafka = services["kafka"]
    image, tag = kafka["image"].split(":")
    assert image == "apache/kafka" and int(tag.split(".")[0]) >= 4
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "zookeeper" not in str(env).lower()


def test_prometheus_finds_every_worker_and_loads_the_rules(services: dict[str, Any]) -> None:
    prometheus = services["prometheus"]
    config_path = mount_source(prometheus, "/etc/prometheus/prometheus.yml")
    config = yaml.safe_load(config_path.read_text())
    assert config_path.parent == PROMETHEUS
    for rule_file in config["rule_files"]:
        in_container = f"/etc/prometheus/{rule_file}"
        assert mount_source(prometheus, in_container) == PROMETHEUS / rule_file, (
            f"{rule_file} is not mounted beside the config"
        )
    assert "alerts.yml" in config["rule_files"]
    (job,) = config["scrape_configs"]
    assert job["job_name"].startswith("pipeline"), 'the alerts select job=~"pipeline.*"'
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["type"] == "A", "every replica, by Docker's DNS"
    assert sd["port"] == int(services["worker"]["environment"]["PIPELINE_WEB_PORT"])


@needs_promtool
def test_promtool_checks_the_compose_prometheus_config(services: dict[str, Any]) -> None:
    config = mount_source(services["prometheus"], "/etc/prometheus/prometheus.yml")
    result = promtool("check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_sends_its_alerts_to_the_alertmanager_service(services: dict[str, Any]) -> None:
    prometheus = services["prometheus"]
    config = yaml.safe_load(mount_source(prometheus, "/etc/prometheus/prometheus.yml").read_text())
    (alertmanagers,) = config["alerting"]["alertmanagers"]
    (static,) = alertmanagers["static_configs"]
    (target,) = static["targets"]
    host, port = target.split(":")
    alertmanager = services[host]
    assert f"{port}:{port}" in alertmanager["ports"]
    shipped = DEPLOY / "alertmanager" / "alertmanager.yml"
    assert mount_source(alertmanager, "/etc/alertmanager/alertmanager.yml") == shipped


def test_grafana_gets_the_data_source_and_the_dashboard(services: dict[str, Any]) -> None:
    grafana = services["grafana"]
    provisioning = mount_source(grafana, "/etc/grafana/provisioning")
    assert provisioning == GRAFANA / "provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["url"] == "http://prometheus:9090" and "prometheus" in services
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "pipeline.yml").read_text())[
        "providers"
    ]
    dashboards = mount_source(grafana, provider["options"]["path"])
    assert dashboards == GRAFANA / "dashboards"
    assert list(dashboards.glob("*.json"))
