"""Topology files for enricher tests: the minimal base topology with one stage inserted."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def topology_file(tmp_path: Path, stage: str) -> tuple[Path, int]:
    """The shipped topology with ``stage`` inserted before route: (path, index of the stage)."""
    text = (REPO / "tests" / "enrichers" / "base_topology.yaml").read_text(encoding="utf-8")
    text = text.replace("../avro/", f"{REPO / 'avro'}/")
    assert "  - id: route\n" in text
    text = text.replace("  - id: route\n", stage + "\n\n  - id: route\n", 1)
    path = tmp_path / "topology.yaml"
    path.write_text(text, encoding="utf-8")
    stage_id = yaml.safe_load(stage)[0]["id"]
    index = [s["id"] for s in yaml.safe_load(text)["stages"]].index(stage_id)
    return path, index
