"""Shared helpers of the deployment-artefact tests (Prometheus rules, Grafana dashboard)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.metrics import PipelineMetrics

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "deploy" / "prometheus"
GRAFANA = REPO / "deploy" / "grafana"

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (Debian: apt-get install prometheus)",
)


def promtool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def defined_series_names() -> set[str]:
    """Every series name the worker exports: metric families plus histogram suffixes."""
    metrics = PipelineMetrics(topology="t", topology_version="1")
    names = set()
    histograms = {m.name for m in metrics.registry.collect() if m.type == "histogram"}
    for name in metrics.metric_names():
        names.add(name)
        if name in histograms:
            names.update(name + suffix for suffix in HISTOGRAM_SUFFIXES)
    return names


PIPELINE_NAME = re.compile(r"(?<![\w:])pipeline_[a-z_]+")
"""A ``pipeline_*`` metric name in PromQL (not the inside of a recording rule's name)."""
RECORDING_NAME = re.compile(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+")


def pipeline_names(expr: str) -> set[str]:
    # Label values in quotes ("pipeline-ecommerce-...") are not metric names.
    return set(PIPELINE_NAME.findall(re.sub(r'"[^"]*"', '""', expr)))
