"""deploy/grafana: the dashboard is valid JSON on a templated data source, its queries name only
metrics the worker exports (and show every one of them), and every panel is documented."""

from __future__ import annotations

import json
import re
from typing import Any, Iterator

import pytest
import yaml

from tests.deploy.common import (
    GRAFANA,
    defined_series_names,
    needs_promtool,
    pipeline_names,
    promtool,
)

DASHBOARD = GRAFANA / "dashboards" / "pipeline.json"
TEMPLATED = {"type": "prometheus", "uid": "${datasource}"}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows keep their panels inside


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target, annotation and query variable."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            yield f"annotation {annotation['name']}", annotation["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            yield f"variable {variable['name']}", variable["query"]["query"]


def test_the_data_source_is_a_template_variable(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == TEMPLATED, variable["name"]
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == TEMPLATED, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == TEMPLATED, panel["title"]
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            assert annotation["datasource"] == TEMPLATED
    assert "${datasource}" not in json.dumps(dashboard).replace('"uid": "${datasource}"', "")


def test_queries_name_only_metrics_the_worker_exports(dashboard: dict[str, Any]) -> None:
    exported = defined_series_names()
    for where, expr in queries(dashboard):
        unknown = pipeline_names(expr) - exported
        assert not unknown, (
            f"{where}: {expr} names metrics PipelineMetrics does not define: {unknown}"
        )
        assert ":" not in re.sub(r'"[^"]*"|\[[^\]]*\]', "", expr), (
            f"{where}: uses a recording rule; the dashboard must work without alerts.yml loaded"
        )


def test_every_exported_metric_is_on_the_dashboard(dashboard: dict[str, Any]) -> None:
    shown = set()
    for _, expr in queries(dashboard):
        shown |= {re.sub(r"_(bucket|sum|count)$", "", n) for n in pipeline_names(expr)}
    families = {n for n in defined_series_names() if n.startswith("pipeline_")}
    families = {n for n in families if not re.search(r"_(bucket|sum|count)$", n) or n in shown}
    assert families - shown == set()


def test_every_panel_has_a_unit_a_description_and_a_unique_place(dashboard: dict[str, Any]) -> None:
    ids = set()
    cells: set[tuple[int, int]] = set()
    for panel in panels(dashboard):
        assert panel["id"] not in ids
        ids.add(panel["id"])
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))
        if panel["type"] == "row":
            continue
        assert panel["description"], panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        assert panel["targets"], panel["title"]


def test_every_panel_is_described_in_the_readme(dashboard: dict[str, Any]) -> None:
    readme = (GRAFANA / "README.md").read_text(encoding="utf-8")
    for panel in panels(dashboard):
        if panel["type"] == "row":
            assert f"### {panel['title']}" in readme, panel["title"]
        else:
            assert f"**{panel['title']}**" in readme, panel["title"]


def test_provisioning_points_at_the_dashboard() -> None:
    provisioning = GRAFANA / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert [s["type"] for s in sources["datasources"]] == ["prometheus"]
    providers = yaml.safe_load((provisioning / "dashboards" / "pipeline.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"]


@needs_promtool
def test_every_query_parses(dashboard: dict[str, Any], tmp_path: Any) -> None:
    """promtool parses each query (Grafana's variables replaced by plausible values)."""
    substitutions = {
        "$__rate_interval": "1m",
        "$job": "pipeline",
        "$instance": ".+",
        "$aggregate": ".+",
    }
    rules = []
    for i, (where, expr) in enumerate(queries(dashboard)):
        if expr.startswith("label_values("):
            continue  # Grafana's own function, not PromQL
        for variable, value in substitutions.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"{where}: unknown variable in {expr}"
        rules.append({"record": f"dashboard:query_{i}:check", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
