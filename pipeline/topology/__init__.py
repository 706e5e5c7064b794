"""Topology files: parsed into a typed model that refuses unknown keys."""

from pipeline.topology.loader import check_topologies, load_topology
from pipeline.topology.model import Topology

__all__ = ["Topology", "load_topology", "check_topologies"]
