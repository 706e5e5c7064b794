"""Shared fixtures for the core (no Kafka) tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest

from pipeline.core.processor import Processor
from pipeline.topology import Topology, load_topology

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "topologies" / "ecommerce.yaml"
FIXED = 1_795_000_000.0
"""The injected "now" (seconds) of time-dependent tests: 2026-11-18T11:06:40Z."""
TEST_ENV = {"PIPELINE_PII_KEY": "test-only-pii-key-0123456789abcdef"}
"""What the shipped topology needs from the environment (its pii stage hashes with this key)."""


def pytest_configure(config: pytest.Config) -> None:
    # CLI and worker tests read the real environment: give them the test key too.
    for name, value in TEST_ENV.items():
        os.environ.setdefault(name, value)


@pytest.fixture(scope="session")
def example_topology() -> Topology:
    return load_topology(EXAMPLE, env=TEST_ENV)


@pytest.fixture
def processor(example_topology: Topology) -> Processor:
    """validate → route of the shipped topology: one output per input, whatever the input.

    (The shipped topology's dedupe and enrich stages have tests of their own.)
    """
    built = Processor(example_topology, clock=lambda: FIXED)
    built.middle = []
    return built


@pytest.fixture(scope="session")
def example_text() -> str:
    """The shipped topology with its schema paths made absolute, to be written anywhere."""
    return EXAMPLE.read_text(encoding="utf-8").replace("../avro/", f"{REPO / 'avro'}/")


@pytest.fixture
def make_topology(tmp_path: Path, example_text: str) -> Callable[..., Topology]:
    """Load a variant of the shipped topology: ``make_topology(replace={"old": "new"})``."""

    def make(replace: dict[str, str] | None = None, name: str = "variant.yaml") -> Topology:
        text = example_text
        for old, new in (replace or {}).items():
            assert old in text, f"{old!r} is not in the example topology"
            text = text.replace(old, new)
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return load_topology(path, env=TEST_ENV)

    return make
