"""Topology files: parsed into a typed model that refuses unknown keys."""

from pipeline.topology.loader import load_topology, check_topologies
from pipeline.topology.model import Topology

__all__ = ["Topology", "load_topology", "check_topologies"]
