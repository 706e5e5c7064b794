"""deploy/alertmanager: the config is valid, routes each alert of deploy/prometheus/alerts.yml by
its severity, and silences what a down worker explains (amtool, offline); a real Prometheus with
the compose wiring delivers a firing alert to a real Alertmanager running the shipped config."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.common import PROMETHEUS, REPO

CONFIG = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")

needs_amtool = pytest.mark.skipif(
    shutil.which("amtool") is None,
    reason="amtool is not installed (Debian: apt-get install prometheus-alertmanager; .ci/run does)",
)


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["amtool", *args], capture_output=True, text=True, timeout=60, check=False
    )


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


@needs_amtool
def test_amtool_accepts_the_config() -> None:
    result = amtool("check-config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_amtool
@pytest.mark.parametrize("rule", alerts(), ids=lambda rule: rule["alert"])
def test_every_alert_is_routed_by_its_severity(rule: dict[str, Any]) -> None:
    severity = rule["labels"]["severity"]
    result = amtool(
        "config", "routes", "test", f"--config.file={CONFIG}",
        f"alertname={rule['alert']}", f"severity={severity}", "job=pipeline",
    )
    assert result.returncode == 0, result.stderr
    wanted = {"critical": "pipeline-page", "warning": "pipeline-ticket"}[severity]
    assert result.stdout.split() == [wanted]


def test_a_down_worker_silences_the_rest_of_its_alerts_only() -> None:
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    names = {rule["alert"] for rule in alerts()}
    (down,) = [r for r in config["inhibit_rules"] if 'alertname="PipelineWorkerDown"' in r["source_matchers"]]
    assert down["equal"] == ["job", "instance"], "only the same worker's alerts"
    assert down["target_matchers"] == ['alertname!="PipelineWorkerDown"']
    for rule in config["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            for name in matcher.split('"')[1].split("|"):
                assert name in names, f"inhibit rule names an alert that does not exist: {name}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.mark.skipif(
    ALERTMANAGER is None or shutil.which("prometheus") is None,
    reason="prometheus and prometheus-alertmanager are not installed (.ci/run installs them)",
)
def test_prometheus_delivers_a_firing_alert_to_the_shipped_alertmanager(tmp_path: Path) -> None:
    """The compose wiring for real: a rule that fires at once, Prometheus's alerting block as in
    prometheus-compose.yml (another address), the shipped Alertmanager config with a webhook
    added to the page receiver (its only change): the alert arrives there, routed by severity."""
    received: list[dict[str, Any]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # the http.server API names it
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    hook = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=hook.serve_forever, daemon=True).start()

    am_config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    (page,) = [r for r in am_config["receivers"] if r["name"] == "pipeline-page"]
    page["webhook_configs"] = [{"url": f"http://127.0.0.1:{hook.server_port}/page"}]
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(am_config))
    am_port = free_port()

    compose_prometheus = yaml.safe_load((PROMETHEUS / "prometheus-compose.yml").read_text())
    prometheus_config = {
        "global": {"evaluation_interval": "1s", "scrape_interval": "1s"},
        "rule_files": ["rules.yml"],
        "alerting": compose_prometheus["alerting"],
    }
    prometheus_config["alerting"]["alertmanagers"][0]["static_configs"] = [
        {"targets": [f"127.0.0.1:{am_port}"]}
    ]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config))
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "test", "rules": [{
        "alert": "PipelineWorkerDown", "expr": 'vector(1)',
        "labels": {"severity": "critical", "job": "pipeline", "instance": "worker-0:6066"},
    }]}]}))
    prom_port = free_port()
    processes = [
        subprocess.Popen(
            [ALERTMANAGER, f"--config.file={tmp_path / 'alertmanager.yml'}",
             f"--storage.path={tmp_path / 'am'}", f"--web.listen-address=127.0.0.1:{am_port}",
             # no clustering: its default port, 9094, is the local broker's SASL listener
             "--cluster.listen-address=", "--log.level=debug"],
            stdout=subprocess.DEVNULL, stderr=(tmp_path / "alertmanager.log").open("wb"),
        ),
        subprocess.Popen(
            ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}",
             # The first send can precede the notifier's discovery of the Alertmanager; the
             # resend then waits resend-delay (1 m by default).
             "--rules.alert.resend-delay=1s"],
            stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("wb"),
        ),
    ]
    try:
        deadline = time.monotonic() + 90  # the page route waits 10 s to group (~11 s here)
        while time.monotonic() < deadline and not received:
            time.sleep(1)
        logs = (tmp_path / "alertmanager.log").read_text()[-2000:]
        assert received, f"no notification within 90 s; alertmanager log: {logs}"
        (alert,) = received[0]["alerts"]
        assert received[0]["receiver"] == "pipeline-page"
        assert alert["status"] == "firing"
        assert alert["labels"]["alertname"] == "PipelineWorkerDown"
        assert received[0]["groupLabels"] == {"alertname": "PipelineWorkerDown", "job": "pipeline"}
        listed = get_json(f"http://127.0.0.1:{am_port}/api/v2/alerts")
        assert [a["labels"]["instance"] for a in listed] == ["worker-0:6066"]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
        hook.shutdown()
